@echo off
rem Install tws-relay into this checkout's virtual environment (.venv) and start it on .\relay.yaml.
rem Arguments go to relay, e.g.  scripts\install.cmd check
rem Afterwards the relay is .venv\Scripts\relay.exe (or activate: .venv\Scripts\activate).
setlocal
cd /d "%~dp0.."
call "%~dp0_venv.cmd" || exit /b 1
"%VENV_PY%" -m pip install -q --disable-pip-version-check . || exit /b 1
rem the installed command, as scripts/install runs it (not python -m relay from this checkout)
for %%I in ("%VENV_PY%") do set "VENV_BIN=%%~dpI"
"%VENV_BIN%relay.exe" %*
exit /b %ERRORLEVEL%
