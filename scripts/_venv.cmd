@echo off
rem Called by install.cmd and test.cmd: make (or reuse) this checkout's virtual environment and set
rem VENV_PY. PYTHON picks the interpreter (default: the py launcher, else python), RELAY_VENV the
rem folder (default .venv). A .cmd, not a .ps1: PowerShell's default execution policy blocks scripts.
if "%RELAY_VENV%"=="" (set "VENV=.venv") else (set "VENV=%RELAY_VENV%")
set "VENV_PY=%VENV%\Scripts\python.exe"
if exist "%VENV_PY%" goto :eof
set "PY=%PYTHON%"
if "%PY%"=="" (where py >nul 2>nul && set "PY=py -3" || set "PY=python")
%PY% -c "import sys; sys.exit(sys.version_info < (3, 9))" >nul 2>nul
if errorlevel 1 (
  echo scripts: Python 3.9 or newer is needed: install it from python.org, then run this again 1>&2
  exit /b 1
)
echo scripts: making a virtual environment in %VENV% 1>&2
%PY% -m venv "%VENV%" || exit /b 1
"%VENV_PY%" -m pip install -q --disable-pip-version-check --upgrade pip || exit /b 1
