import sys

from adps.cli import main

sys.exit(main())
