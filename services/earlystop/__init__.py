"""Early-stop service: a Faust stream processor (``python -m services.earlystop``).

``app`` builds the Faust app (tansu settings), ``tables`` declares its tables,
``agents`` holds the studies / stage 1 / stage 2 agents, ``health`` the gRPC health
endpoint. The scheduling rules themselves live in ``ladder.schedulers``.
"""
