@echo off
rem Run the whole test suite in this checkout's virtual environment (.venv), after installing the
rem package and the test tools there. Extra arguments go to pytest, e.g.  scripts\test.cmd -k splice -x
setlocal
cd /d "%~dp0.."
call "%~dp0_venv.cmd" || exit /b 1
"%VENV_PY%" -m pip install -q --disable-pip-version-check -e ".[test]" || exit /b 1
"%VENV_PY%" -m pytest %*
exit /b %ERRORLEVEL%
