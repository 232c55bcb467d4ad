# azd postprovision hook (Windows): see wait-for-role-propagation.sh for why and how long.
$ErrorActionPreference = 'Stop'
if ((azd env get-value ROLE_PROPAGATION_WAITED 2>$null) -eq 'true') { exit 0 }
$wait = if ($env:ROLE_PROPAGATION_WAIT_SECONDS) { [int]$env:ROLE_PROPAGATION_WAIT_SECONDS } else { 300 }
if ($wait -gt 0) {
    Write-Host "Waiting $wait s for the new role assignments to propagate before the first deployment"
    Write-Host "(once per environment; ROLE_PROPAGATION_WAIT_SECONDS=0 skips it)."
    Start-Sleep -Seconds $wait
}
azd env set ROLE_PROPAGATION_WAITED true
