<#
.SYNOPSIS
  Remove the tws-relay logon task. Idempotent; -WhatIf shows what it would do.
#>
[CmdletBinding(SupportsShouldProcess)]
param([string]$TaskName = "tws-relay")
$ErrorActionPreference = "Stop"
if (-not (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue)) {
  Write-Host "No task '$TaskName': nothing to do."
  return
}
if ($PSCmdlet.ShouldProcess($TaskName, "stop and unregister")) {
  Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
  Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
  Write-Host "Removed '$TaskName'."
}
