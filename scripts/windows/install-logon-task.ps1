<#
.SYNOPSIS
  Start tws-relay at logon, as the current user (no administrator rights needed). Idempotent:
  running it again updates the task. -WhatIf shows what it would do.
.EXAMPLE
  .\install-logon-task.ps1
  .\install-logon-task.ps1 -Config "$env:APPDATA\relay\relay.yaml" -WhatIf
#>
[CmdletBinding(SupportsShouldProcess)]
param(
  [string]$RelayExe = $(if (Get-Command relay.exe -ErrorAction SilentlyContinue) { (Get-Command relay.exe).Source } else { "" }),
  [string]$Config = "$env:APPDATA\relay\relay.yaml",
  [string]$TaskName = "tws-relay"
)
$ErrorActionPreference = "Stop"
if (-not $RelayExe) { throw "relay.exe not found on PATH: pass -RelayExe C:\path\to\relay.exe" }
if (-not (Test-Path $Config)) { throw "no config at $Config: copy relay.yaml there first (or pass -Config)" }

$action = New-ScheduledTaskAction -Execute $RelayExe -Argument "serve --config `"$Config`""
$trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\$env:USERNAME"
# No time limit; restart if it ever exits; keep running on battery (a trading laptop).
$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -RestartCount 999 `
  -RestartInterval (New-TimeSpan -Minutes 1) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
$principal = New-ScheduledTaskPrincipal -UserId "$env:USERDOMAIN\$env:USERNAME" -LogonType Interactive -RunLevel Limited

if ($PSCmdlet.ShouldProcess($TaskName, "register logon task running $RelayExe serve --config $Config")) {
  Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
    -Principal $principal -Description "tws-relay: lets WSL bots reach TWS with localhost-only on" -Force | Out-Null
  Write-Host "Registered '$TaskName'. Start it now with: Start-ScheduledTask -TaskName $TaskName"
}
