import sys

from h1r.cli import main

sys.exit(main())
