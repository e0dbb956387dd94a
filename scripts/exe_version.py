"""The version resource of relay.exe / relayw.exe (File Properties > Details on Windows), made from
relay/__init__.py's version by relay.spec. PyInstaller writes it on Windows builds only."""
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


def version_info(version: str, name: str):
    """PyInstaller's form of it (US English, Unicode), for EXE(version=...)."""
    from PyInstaller.utils.win32.versioninfo import (FixedFileInfo, StringFileInfo, StringStruct, StringTable,
                                                     VarFileInfo, VarStruct, VSVersionInfo)
    n = numbers(version)
    return VSVersionInfo(
        ffi=FixedFileInfo(filevers=n, prodvers=n, mask=0x3F, flags=0x0, OS=0x40004, fileType=0x1, subtype=0x0),
        kids=[StringFileInfo([StringTable("040904B0", [StringStruct(k, v) for k, v in strings(version, name)])]),
              VarFileInfo([VarStruct("Translation", [0x0409, 1200])])])
