@echo off
rem Called by install.cmd and test.cmd: make (or reuse) this checkout's virtual environment and set
rem VENV_PY. PYTHON picks the interpreter (a path may hold spaces: C:\Program Files\...), else the
rem python on PATH (what the python.org installer or setup-python put there), else the py launcher;
rem RELAY_VENV the folder (default .venv). A .cmd, not a .ps1: PowerShell's default execution
rem policy blocks scripts.
if "%RELAY_VENV%"=="" (set "VENV=.venv") else (set "VENV=%RELAY_VENV%")
set "VENV_PY=%VENV%\Scripts\python.exe"
if exist "%VENV_PY%" goto :eof
set "PY_EXE=%PYTHON%"
set "PY_ARGS="
if not "%PY_EXE%"=="" goto check
rem the Store's python.exe stub on PATH fails this check, and the py launcher is tried next
python -c "import sys; sys.exit(sys.version_info < (3, 9))" >nul 2>nul
if not errorlevel 1 (
  set "PY_EXE=python"
  goto check
)
where py >nul 2>nul
if errorlevel 1 (
  set "PY_EXE=python"
) else (
  set "PY_EXE=py"
  set "PY_ARGS=-3"
)
:check
"%PY_EXE%" %PY_ARGS% -c "import sys; sys.exit(sys.version_info < (3, 9))" >nul 2>nul
if errorlevel 1 (
  echo scripts: Python 3.9 or newer is needed: install it from python.org, then run this again 1>&2
  exit /b 1
)
echo scripts: making a virtual environment in %VENV% 1>&2
"%PY_EXE%" %PY_ARGS% -m venv "%VENV%" || exit /b 1
"%VENV_PY%" -m pip install -q --disable-pip-version-check --upgrade pip || exit /b 1
