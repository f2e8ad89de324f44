import os

# Unit and integration tests never pick up a developer's running stack.
os.environ.setdefault("LADDER_STATE_DIR", os.path.join(os.getcwd(), ".ladder-test"))
