"""``python -m dashboard [streamlit options]``: ``streamlit run dashboard/app.py``, with what the first page
computes (torch and grad-cam imported, the face detector and the default checkpoint loaded, the example
photo explained) done in the background while the server starts and the browser connects, rather than
after the first page is asked for (faceview.warm_up). `make dashboard` runs this."""

import logging
import sys
import threading
from pathlib import Path

log = logging.getLogger("agegender.dashboard")


def warm() -> None:
    try:
        from dashboard import faceview

        faceview.warm_up()
    except Exception:  # noqa: BLE001 - only a head start: the page meets the same problem and reports it itself
        log.warning("warming the caches failed; the first page will compute what it needs", exc_info=True)


def main() -> int:
    from streamlit.web import cli

    threading.Thread(target=warm, name="agegender-warm-up", daemon=True).start()
    sys.argv = ["streamlit", "run", str(Path(__file__).with_name("app.py")), *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
