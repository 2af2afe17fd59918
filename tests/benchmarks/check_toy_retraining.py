"""Check: retraining the toy weights with their recorded settings reproduces the shipped ones.

Reads ``workflow/toy_model/manifest.json`` (its settings, toy world and command), retrains into a
temporary folder exactly as the documented command does
(``PYTHONPATH=workflow/scripts nice python3 -m brainldm.toy.training --out workflow/toy_model``;
about 12 minutes of one free CPU core), and prints per file whether the bytes are identical; where
they are not (another CPU kind or library build rounds differently), the largest weight
difference and the held-out results side by side. It passes (exit 0) when every file is
identical, or when each held-out result (VAE PixCorr, classifier accuracy, text-to-image
attribute matches) is within ``--tolerance`` (0.1) of the shipped one.

    PYTHONPATH=workflow/scripts nice python3 tests/benchmarks/check_toy_retraining.py [--work DIR]

``--work`` keeps the checkpoints (a stopped check resumes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

from brainldm.toy.model import SHIPPED_WEIGHTS, WEIGHT_FILES, load_state, read_manifest  # noqa: E402
from brainldm.toy.training import TrainingSettings, train_toy_weights  # noqa: E402
from brainldm.toy.world import ToyParams  # noqa: E402


def held_out_results(manifest: dict) -> dict[str, float]:
    results = {"vae.pixcorr_holdout_images": manifest["vae"]["pixcorr_holdout_images"]}
    results.update({f"semantic.{k}": v for k, v in manifest["semantic"]["holdout_accuracy"].items()})
    results.update({f"generation.{k}": v for k, v in manifest["ldm"]["holdout_generation_match"].items()})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the retrained weights and checkpoints"
    )
    parser.add_argument("--tolerance", type=float, default=0.1)
    args = parser.parse_args()
    shipped = read_manifest(SHIPPED_WEIGHTS)
    settings_values = dict(shipped["settings"])
    settings_values["centred_scale"] = tuple(settings_values["centred_scale"])
    settings = TrainingSettings(**settings_values)
    params = ToyParams.from_config(shipped["toy"])
    work = args.work or Path(tempfile.mkdtemp(prefix="toy_retrain_"))
    print(f"retraining with {settings} on {params} in {work}", flush=True)
    retrained = train_toy_weights(
        work / "weights", settings, params, work / "checkpoints", command="check_toy_retraining"
    )
    identical = True
    for name in WEIGHT_FILES.values():
        same = retrained["sha256"][name] == shipped["sha256"][name]
        identical &= same
        line = f"{name}: {'identical' if same else 'differs'}"
        role = next((r for r, n in WEIGHT_FILES.items() if n == name), None)
        if not same and name.endswith(".safetensors"):
            a, b = load_state(SHIPPED_WEIGHTS, role), load_state(work / "weights", role)
            line += f", max |difference| {max(float((a[k] - b[k]).abs().max()) for k in a):.3g}"
        print(line)
    ok = identical
    if not identical:
        ok = True
        print(f"{'held-out result':40s} shipped  retrained")
        ours, theirs = held_out_results(shipped), held_out_results(retrained)
        for key in ours:
            close = abs(ours[key] - theirs[key]) <= args.tolerance
            ok &= close
            print(f"{key:40s} {ours[key]:.3f}    {theirs[key]:.3f}{'' if close else '  <- beyond tolerance'}")
    print(
        "retraining reproduces the shipped weights" + ("" if identical else " within tolerance")
        if ok
        else "retraining does NOT reproduce the shipped weights"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
