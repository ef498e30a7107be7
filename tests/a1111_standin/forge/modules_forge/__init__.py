"""Stand-in of Forge's modules_forge package (only what face restoration touches)."""
