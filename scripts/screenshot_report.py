"""Make docs/report.png, the README's picture of ``rope-behavior demo``'s report, and
docs/compare-report.png, the interventions page's picture of ``rope-behavior compare``'s.

    python scripts/screenshot_report.py            # runs the demo into runs/demo, then shoots it
    python scripts/screenshot_report.py --compare  # the docs table's compare run, runs/compare

Needs headless Chromium (Debian: ``apt-get install chromium``).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# the command of the table in docs/capabilities/interventions.md
COMPARE = ["compare", "--edit", "prope:0.25", "--edit", "prope:0.5", "--edit", "linear:2",
           "--edit", "linear:4", "--edit", "ntk:2", "--edit", "ntk:4", "--edit", "yarn:2",
           "--edit", "yarn:4", "--edit", "nope-below-band", "--context", "128",
           "--max-prompts", "32", "--task", "binding"]  # fmt: skip


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshot_report: needs headless Chromium (apt-get install chromium)")
    compare = "--compare" in sys.argv[1:]
    out = REPO / "runs" / ("compare" if compare else "demo")
    command = COMPARE if compare else ["demo"]
    subprocess.run([sys.executable, "-m", "rope_behavior.cli", *command, "--out", str(out), "--overwrite"], check=True)
    target = REPO / "docs" / ("compare-report.png" if compare else "report.png")
    size = "1400,1300" if compare else "1400,2400"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={size}",
             "--virtual-time-budget=20000", f"--screenshot={target}",
             (out / "report.html").as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
