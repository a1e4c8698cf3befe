"""Screenshots of the approximation view, taken from a real TensorBoard server.

Trains the quickstart-sized model of ``benchmarks/approximation_overhead.py``
with ``ApproximationMonitor``, serves the logs with ``tensorboard`` on
127.0.0.1 only, and photographs the images and scalars dashboards with headless
Chromium (``apt-get install chromium``). The server is stopped afterwards.

    python scripts/approximation_screenshot.py --steps 400 --every 50
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.approximation_overhead import QuickstartSized, token_batches  # noqa: E402
from src.callbacks.approximation import ApproximationMonitor  # noqa: E402

PAGES = {  # no tag filter: a filter adds a second, duplicate "matching" section
    "approximation_view.png": "#images",
    "approximation_scalars.png": "#scalars&_smoothingWeight=0",
    "approximation_histograms.png": "#histograms",
}


def free_port() -> int:
    """A port nobody listens on now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float = 60.0) -> None:
    """Block until ``url`` answers (TensorBoard loads the event files in the background)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images")
    parser.add_argument("--window", default="1400,1000")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("needs headless Chromium: apt-get install chromium")

    with tempfile.TemporaryDirectory() as log_dir:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(
            max_steps=args.steps, accelerator="cpu", logger=TensorBoardLogger(log_dir, name="quickstart"),
            callbacks=[ApproximationMonitor(every_n_steps=args.every)], enable_checkpointing=False,
            enable_progress_bar=False, log_every_n_steps=10, val_check_interval=500,
            check_val_every_n_epoch=None, num_sanity_val_steps=0,
        )
        trainer.fit(QuickstartSized(), token_batches(12000, 32, 1, True), token_batches(1000, 32, 2, False))

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", log_dir, "--host", "127.0.0.1",
             "--port", str(port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}/"
            wait_for(base)
            time.sleep(5)  # let the first reload read every event file
            args.out.mkdir(parents=True, exist_ok=True)
            for name, fragment in PAGES.items():
                subprocess.run(
                    [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     f"--window-size={args.window}", "--virtual-time-budget=20000",
                     f"--screenshot={args.out / name}", base + fragment],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180,
                )
                print(f"wrote {args.out / name}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
