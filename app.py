"""phi3ui: chat with Phi-3 on OpenVINO in the browser. `python app.py --help` for options."""

import sys

from phi3ui.server import main

if __name__ == "__main__":
    sys.exit(main())
