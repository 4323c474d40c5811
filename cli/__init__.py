"""The ``sigprop`` command line (installed as the ``sigprop_cli`` package)."""
