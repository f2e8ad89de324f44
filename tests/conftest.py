import os

# Unit and integration tests never pick up a developer's running stack.
os.environ.setdefault("LADDER_STATE_DIR", os.path.join(os.getcwd(), ".ladder-test"))
# The embedded broker keeps its log in memory in tests: no object store to start (and
# to wait ~16 s for when it stops) per stack. The durable stack's own tests
# (tests/integration/test_durable_stack.py) ask for s3 explicitly.
os.environ.setdefault("LADDER_BROKER_STORAGE", "memory")
