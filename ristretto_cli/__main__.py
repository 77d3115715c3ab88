import sys

from ristretto_cli.cli import main

sys.exit(main())
