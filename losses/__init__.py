"""padt.losses: see the package docstring of each module."""
from padt._subpackage_guard import refuse_top_level_import

refuse_top_level_import(__name__, "losses")
