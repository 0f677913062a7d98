"""Suite-wide: decoded image folders go to a temporary cache, never into the user's own cache folder."""
import pytest

from compression_core.datasets_cache import ENV_VAR


@pytest.fixture(autouse=True, scope="session")
def _private_decode_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_VAR, str(tmp_path_factory.mktemp("decoded")))
    yield
    mp.undo()
