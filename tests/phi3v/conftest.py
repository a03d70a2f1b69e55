"""Register the pytest marks used by transformers' own test mixins (see transformers_suite.py)."""

TRANSFORMERS_MARKS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
)


def pytest_configure(config):
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own common tests")
