import pytest


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> str:
    """The bundled sample conversations prepared once for 128-token rows."""
    from vicuna_jax.data import bundled_tokenizer_path
    from vicuna_jax.data.prepare import bundled_sample_path, prepare_dataset

    out = str(tmp_path_factory.mktemp("data") / "bundled")
    return prepare_dataset(bundled_sample_path(), out, tokenizer=bundled_tokenizer_path(), max_length=129,
                           validation_fraction=0.05, verbose=False)
