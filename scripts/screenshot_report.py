"""Make docs/report.png, the README's picture of ``rope-behavior demo``'s report.

    python scripts/screenshot_report.py            # runs the demo into runs/demo, then shoots it

Needs headless Chromium (Debian: ``apt-get install chromium``).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshot_report: needs headless Chromium (apt-get install chromium)")
    out = REPO / "runs" / "demo"
    subprocess.run([sys.executable, "-m", "rope_behavior.cli", "demo", "--out", str(out), "--overwrite"], check=True)
    target = REPO / "docs" / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1400,2400",
             "--virtual-time-budget=20000", f"--screenshot={target}",
             (out / "report.html").as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
