"""Parity with the official code on the golden fixtures in ../shared/parity (skipped when absent)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHARED, shared_path
from vspbfr_core.parity import check_fixture, compare, regen_tensor, run_fixture

FIXTURES = sorted(p.parent.name for p in (SHARED / "parity").glob("*/golden_f64.safetensors")) if SHARED.exists() else []


@pytest.mark.parametrize("name", FIXTURES or ["<none>"])
def test_fixture_float64_within_1e9(name: str) -> None:
    fixture = shared_path("parity", name)
    results, kind = check_fixture(fixture, torch.float64)
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    assert len(results) >= 20
    assert all(r.tolerance == 1e-9 for r in results)


@pytest.mark.parametrize("name", FIXTURES or ["<none>"])
def test_fixture_float32_smoke(name: str) -> None:
    fixture = shared_path("parity", name)
    results, _ = check_fixture(fixture, torch.float32)
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["case_a"])      # end to end; bfloat16 convolutions are slow on CPU (minutes)
def test_bfloat16_restored_within_documented_tolerance(name: str) -> None:
    from vspbfr_core.parity import HALF_TOLERANCE

    results, kind = check_fixture(shared_path("parity", name), torch.bfloat16)
    restored = next(r for r in results if r.name == "restored")
    assert restored.tolerance == HALF_TOLERANCE[torch.bfloat16][kind]
    assert restored.ok, restored.line()
    assert restored.max_abs > 1e-4          # it really ran in bfloat16


def test_comparison_catches_a_wrong_tensor() -> None:
    fixture = shared_path("parity", "ddpm_alone")
    ours, golden, kind = run_fixture(fixture, torch.float64)
    assert kind == "ddpm"
    ours["ddpm.out"] = ours["ddpm.out"] + 1e-6
    del ours["ddpm.step1.x0_pred"]
    failed = {r.name for r in compare(ours, golden, {}, torch.float64) if not r.ok}
    assert failed == {"ddpm.out", "ddpm.step1.x0_pred"}


def test_parity_cli_exit_status_and_save(tmp_path: Path) -> None:
    fixture = shared_path("parity", "ddpm_alone")
    out = tmp_path / "ours.safetensors"
    proc = subprocess.run([sys.executable, "-m", "vspbfr_core.parity", str(fixture), "--save", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if " max_abs=" in l]
    assert len(lines) == 25 and all("ref_absmax=" in l for l in lines)
    from safetensors.torch import load_file
    saved = load_file(str(out))
    assert "ddpm.out" in saved and saved["ddpm.out"].dtype == torch.float64
    # a fixture whose golden output was tampered with must fail
    bad = tmp_path / "bad_fixture"
    bad.mkdir()
    golden = load_file(str(fixture / "golden_f64.safetensors"))
    golden["ddpm.out"] = golden["ddpm.out"] + 1e-3
    from safetensors.torch import save_file
    save_file(golden, str(bad / "golden_f64.safetensors"))
    for f in ("tapes.json", "tapes.safetensors", "parity_stats.json"):
        (bad / f).write_bytes((fixture / f).read_bytes())
    (bad / "manifest.json").symlink_to(fixture.parent / "manifest.json")
    proc = subprocess.run([sys.executable, "-m", "vspbfr_core.parity", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1
    assert "ddpm.out" in proc.stdout and "FAIL" in proc.stdout


def test_write_weights_gives_loadable_official_files(tmp_path: Path) -> None:
    import json

    manifest = shared_path("parity", "manifest.json")
    proc = subprocess.run([sys.executable, "-m", "vspbfr_core.parity", "--write-weights", str(manifest), "-o",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    from vspbfr_core.checkpoints import load_checkpoint

    spec = json.loads(manifest.read_text())["dicts"]
    raw = torch.load(tmp_path / "code_diffuser.pt", weights_only=False)
    assert set(raw) >= {"att_mapper", "args", "iter"}          # same container as the released file
    loaded = {p.name: load_checkpoint(p) for p in sorted(tmp_path.glob("*.pt"))}
    assert sorted(loaded) == ["code_diffuser.pt", "restoration_net.pt", "style_encoder_decoder.pt"]
    e = next(e for e in spec["restoration"]["entries"] if e["key"] == "convs.13.ModulatedConv2ds.3.weight")
    net = loaded["restoration_net.pt"].networks["restoration_net"]
    assert torch.equal(net.convs[13].ModulatedConv2ds[3].weight, regen_tensor(e))
    enc = loaded["style_encoder_decoder.pt"].networks["style_encoder"]
    avg = regen_tensor(spec["e4e"]["top_level"][0])
    assert torch.equal(enc.latent_avg, avg)
