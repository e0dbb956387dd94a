<#
.SYNOPSIS
  Start tws-relay at logon, as the current user, with no window (no administrator rights needed).
  It runs relayw.exe (the windowless build, or pip's relayw.exe), logs to
  %LOCALAPPDATA%\relay\logs\relay.log (read it with `relay logs`), and is restarted if it ever exits.
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
  # relayw.exe on PATH (pip install), else beside relay.exe (the standalone build)
  $found = Get-Command relayw.exe -ErrorAction SilentlyContinue
  if (-not $found) {
    $console = Get-Command relay.exe -ErrorAction SilentlyContinue
    if ($console) {
      $beside = Join-Path (Split-Path $console.Source) "relayw.exe"
      if (Test-Path $beside) { $found = Get-Item $beside }
    }
  }
  if (-not $found) { throw "relayw.exe not found on PATH or beside relay.exe: pass -RelayExe C:\path\to\relayw.exe" }
  $RelayExe = if ($found.Source) { $found.Source } else { $found.FullName }
}
if (-not (Test-Path $Config)) { throw "no config at ${Config}: copy relay.yaml there first (or pass -Config)" }

$action = New-ScheduledTaskAction -Execute $RelayExe -Argument "serve --config `"$Config`""
$trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\$env:USERNAME"
# No time limit; restart if it ever exits; keep running on battery (a trading laptop); one instance.
$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -RestartCount 999 `
  -RestartInterval (New-TimeSpan -Minutes 1) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
  -MultipleInstances IgnoreNew
$principal = New-ScheduledTaskPrincipal -UserId "$env:USERDOMAIN\$env:USERNAME" -LogonType Interactive -RunLevel Limited

if ($PSCmdlet.ShouldProcess($TaskName, "register logon task running $RelayExe serve --config $Config")) {
  Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
    -Principal $principal -Description "tws-relay: lets WSL bots reach TWS with localhost-only on" -Force | Out-Null
  Write-Output "Registered '$TaskName'. Start it now: Start-ScheduledTask -TaskName $TaskName"
  Write-Output "See it running: relay status.  Its log: relay logs -f.  Stop it cleanly: relay stop."
}
