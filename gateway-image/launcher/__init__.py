"""The container's entrypoint: IB credentials into IBC's in-memory config, then Xvfb, IBC/IB Gateway and the consumer
under one small supervisor, plus the HEALTHCHECK command.

    python -m launcher run            start everything; exit 0 on SIGTERM, non-zero only when it cannot recover
    python -m launcher health         the HEALTHCHECK: gateway API port accepting AND consumer /livez
    python -m launcher ibc-command X  send X (RESTART, STOP, ...) to IBC's command server on localhost

Exit codes: 0 clean stop, 2 configuration error (never worth a restart: a wrong password retried in a loop gets the
IB account locked), 3 a child kept dying, 4 stayed unhealthy past its grace.
"""

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_CHILD_FAILED = 3
EXIT_UNHEALTHY = 4
