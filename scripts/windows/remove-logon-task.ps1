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
  if (Get-Command relay.exe -ErrorAction SilentlyContinue) { & relay.exe stop 2>$null | Out-Null }
  Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
  Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
  Write-Output "Removed '$TaskName'."
}
