<#
.SYNOPSIS
  Start tws-relay at logon, as the current user, with no window (no administrator rights needed).
  It runs relayw.exe (the windowless build, or pip's relayw.exe) at normal priority (a task's
  default is below normal, with low I/O and memory priority), logs to
  %LOCALAPPDATA%\relay\logs\relay.log (read it with `relay logs`). Task Scheduler retries a start
  that fails (3 times, a minute apart); it does not restart a relay that exits later.
  relayw.exe is looked for beside this script (the release zip), in this checkout's .venv (what
  scripts\install.cmd made), then on PATH.
  Idempotent: running it again updates the task. -WhatIf shows what it would do.
.EXAMPLE
  .\install-logon-task.ps1
  .\install-logon-task.ps1 -RelayExe C:\tools\relayw.exe -Config "$env:APPDATA\relay\relay.yaml" -WhatIf
#>
[CmdletBinding(SupportsShouldProcess)]
param(
  [string]$RelayExe = "",
  [string]$Config = "$env:APPDATA\relay\relay.yaml",
  [string]$TaskName = "tws-relay"
)
$ErrorActionPreference = "Stop"
if (-not $RelayExe) {
  # beside this script (the release zip), this checkout's .venv (no activated venv needed), then PATH
  $candidates = @((Join-Path $PSScriptRoot "relayw.exe"),
                  (Join-Path $PSScriptRoot "..\..\.venv\Scripts\relayw.exe"))
  $RelayExe = $candidates | Where-Object { Test-Path $_ } | Select-Object -First 1
  if (-not $RelayExe) {
    $found = Get-Command relayw.exe -ErrorAction SilentlyContinue
    if ($found) { $RelayExe = $found.Source }
  }
  if (-not $RelayExe) {
    throw "relayw.exe not found beside this script, in .venv\Scripts or on PATH: run scripts\install.cmd first, or pass -RelayExe C:\path\to\relayw.exe"
  }
  $RelayExe = (Resolve-Path $RelayExe).Path
}
if (-not (Test-Path $Config)) { throw "no config at ${Config}: copy relay.yaml there first (or pass -Config)" }

$action = New-ScheduledTaskAction -Execute $RelayExe -Argument "serve --config `"$Config`""
$trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\$env:USERNAME"
# No time limit; normal priority (the default, 7, is BELOW_NORMAL with low I/O and memory priority);
# a start that fails is retried 3 times a minute apart (RestartCount must be 1-255; it never
# restarts a relay that exits later); keep running on battery (a trading laptop); one instance.
$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -Priority 4 -RestartCount 3 `
  -RestartInterval (New-TimeSpan -Minutes 1) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
  -MultipleInstances IgnoreNew
$principal = New-ScheduledTaskPrincipal -UserId "$env:USERDOMAIN\$env:USERNAME" -LogonType Interactive -RunLevel Limited

if ($PSCmdlet.ShouldProcess($TaskName, "register logon task running $RelayExe serve --config $Config")) {
  Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
    -Principal $principal -Description "tws-relay: lets WSL bots reach TWS with localhost-only on" -Force | Out-Null
  Write-Output "Registered '$TaskName'. Start it now: Start-ScheduledTask -TaskName $TaskName"
  Write-Output "See it running: relay status.  Its log: relay logs -f.  Stop it cleanly: relay stop."
}
