import sys

from kqa.cli import main

sys.exit(main())
