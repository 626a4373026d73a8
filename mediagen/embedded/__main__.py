"""`python -m mediagen.embedded --data-dir DIR`: run the embedded servers until SIGINT/SIGTERM."""

import sys

from mediagen.embedded import main

if __name__ == "__main__":
    sys.exit(main())
