import sys

from ffpipe.cli import main

sys.exit(main())
