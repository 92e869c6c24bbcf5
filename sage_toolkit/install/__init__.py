"""The install steps of ``make setup`` (scripts/install/setup_env.sh): the fairseq 0.12.2 compatibility patch and the
check that the installed fairseq works. Run as modules from the checkout's root (``python -m
sage_toolkit.install.patch_fairseq``), so they work before the project itself is installed; they import only the
standard library, torch and fairseq."""
