"""The version resource of relay.exe / relayw.exe (File Properties > Details on Windows), made from
relay/__init__.py's version by relay.spec. PyInstaller reads it from a file in the form below
(`pyi-grab_version`'s); it writes it on Windows builds only."""
import re


def numbers(version: str) -> tuple:
    """The four numbers Windows shows: 1.2.3 -> (1, 2, 3, 0); a pre-release keeps its X.Y.Z."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not found:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(x or 0) for x in found.groups()) + (0,)


def strings(version: str, name: str) -> list:
    """The Details tab's words, for `name`.exe."""
    return [("CompanyName", "tws-relay"), ("FileDescription", "tws-relay: WSL bots reach TWS with localhost-only on"),
            ("FileVersion", version), ("InternalName", name), ("OriginalFilename", f"{name}.exe"),
            ("ProductName", "tws-relay"), ("ProductVersion", version),
            ("LegalCopyright", "MIT License, the tws-relay developers")]


def version_file(version: str, name: str) -> str:
    """The text of PyInstaller's version file (US English, Unicode)."""
    n = numbers(version)
    table = ",\n          ".join(f"StringStruct({k!r}, {v!r})" for k, v in strings(version, name))
    return f"""VSVersionInfo(
  ffi=FixedFileInfo(filevers={n}, prodvers={n}, mask=0x3f, flags=0x0, OS=0x40004, fileType=0x1,
                    subtype=0x0, date=(0, 0)),
  kids=[
    StringFileInfo([StringTable('040904B0', [
          {table}])]),
    VarFileInfo([VarStruct('Translation', [1033, 1200])])
  ]
)
"""
