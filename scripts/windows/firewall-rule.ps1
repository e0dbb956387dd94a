<#
.SYNOPSIS
  Allow WSL to reach the relay through Windows Firewall (run as administrator). Port-scoped,
  -Profile Any (the WSL adapter sits in the Public profile), private remote ranges only.
  Idempotent (replaces its own rule); -Remove deletes it; -WhatIf shows what it would do.
.EXAMPLE
  .\firewall-rule.ps1
  .\firewall-rule.ps1 -Ports 17400,17497 -WhatIf
  .\firewall-rule.ps1 -Remove
#>
[CmdletBinding(SupportsShouldProcess)]
param(
  [int[]]$Ports = @(17400, 17496, 17497, 14001, 14002),
  [string]$RuleName = "tws-relay",
  [switch]$Remove
)
$ErrorActionPreference = "Stop"
$admin = ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole(
  [Security.Principal.WindowsBuiltInRole]::Administrator)
if (-not $admin) { throw "Run this in an administrator PowerShell (firewall rules need it)." }

$existing = Get-NetFirewallRule -DisplayName $RuleName -ErrorAction SilentlyContinue
if ($existing -and $PSCmdlet.ShouldProcess($RuleName, "remove existing rule")) { $existing | Remove-NetFirewallRule }
if ($Remove) { Write-Output "Removed '$RuleName' (if it existed)."; return }

if ($PSCmdlet.ShouldProcess($RuleName, "allow inbound TCP $($Ports -join ',') from private ranges, all profiles")) {
  New-NetFirewallRule -DisplayName $RuleName -Direction Inbound -Action Allow -Protocol TCP `
    -LocalPort $Ports -Profile Any -RemoteAddress 172.16.0.0/12, 192.168.0.0/16, 10.0.0.0/8 | Out-Null
  Write-Output "Added '$RuleName' for ports $($Ports -join ',')."
}

# A Block rule (often left by a dismissed "allow python.exe?" prompt) beats any Allow rule.
$blocking = Get-NetFirewallApplicationFilter | Where-Object { $_.Program -match '(^|\\)(python|pythonw|relay|relayw)\.exe$' } |
  Get-NetFirewallRule | Where-Object { $_.Action -eq 'Block' -and $_.Direction -eq 'Inbound' -and $_.Enabled -eq 'True' }
foreach ($rule in $blocking) {
  Write-Warning "Block rule '$($rule.DisplayName)' defeats the Allow rule. Remove it: Remove-NetFirewallRule -Name '$($rule.Name)'"
}
