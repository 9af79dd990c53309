"""``python -m lib.report``: build a profile's HTML report (see :func:`lib.report.document.main`)."""

from lib.report.document import main

if __name__ == "__main__":
    raise SystemExit(main())
