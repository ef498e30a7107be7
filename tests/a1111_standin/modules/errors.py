"""Stand-in of modules.errors: report() prints '*** ' lines to stderr, as A1111 does."""
import sys
import traceback

exception_records: list = []


def report(message: str, *, exc_info: bool = False) -> None:
    exception_records.append(message)
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False) -> None:
    report(f"{task}: {type(e).__name__}: {e}", exc_info=True)
