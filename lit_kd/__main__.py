"""`python -m lit_kd <command> ...` — see `lit_kd.cli.main`."""

from lit_kd.cli.main import main

if __name__ == "__main__":
    main()
