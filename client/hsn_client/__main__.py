import sys

from hsn_client.cli import main

sys.exit(main())
