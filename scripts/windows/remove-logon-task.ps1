<#
.SYNOPSIS
  Remove the tws-relay logon task: stop the relay cleanly first (`relay stop`, as Ctrl+C would;
  Stop-ScheduledTask alone ends the process at once), then unregister. Idempotent; -WhatIf shows
  what it would do.
#>
[CmdletBinding(SupportsShouldProcess)]
param([string]$TaskName = "tws-relay")
$ErrorActionPreference = "Stop"
if (-not (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue)) {
  Write-Output "No task '$TaskName': nothing to do."
  return
}
if ($PSCmdlet.ShouldProcess($TaskName, "stop the relay (relay stop), then unregister the task")) {
  # relay.exe beside this script, in this checkout's .venv, or on PATH
  $relay = @((Join-Path $PSScriptRoot "relay.exe"), (Join-Path $PSScriptRoot "..\..\.venv\Scripts\relay.exe")) |
    Where-Object { Test-Path $_ } | Select-Object -First 1
  if (-not $relay) { $relay = (Get-Command relay.exe -ErrorAction SilentlyContinue).Source }
  if ($relay) {
    # Windows PowerShell 5.1 turns a native command's stderr into a terminating error under "Stop"
    # (even redirected): a relay that is not running must not abort the removal
    $ErrorActionPreference = "Continue"
    & $relay stop 2>&1 | Out-Null
    $ErrorActionPreference = "Stop"
  }
  Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
  Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
  Write-Output "Removed '$TaskName'."
}
