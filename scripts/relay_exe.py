"""Entry point for the standalone relay.exe (PyInstaller): the same CLI as `python -m relay`."""
from relay.cli import main

if __name__ == "__main__":
    main(prog_name="relay")
