"""What the router's tests share by import. Not in conftest.py: several test folders have a
conftest.py, pytest imports each as module `conftest`, and which one that name finds depends on the
order of collection (tests/operator/operator_testing.py exists for the same reason)."""

API_KEY = "router-test-key"
MODEL = "tiny"
