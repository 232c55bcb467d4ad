#!/bin/sh
# azd postprovision hook: wait once, after the first provisioning of an environment, for the role assignments
# the template just created (the app's Storage Blob Data Owner on the deployment container above all) to
# propagate. Without the wait the first `azd deploy` can fail with 403 on the package container.
#
# Azure documents that role assignment changes can take up to 10 minutes to take effect; in practice a new
# assignment for a managed identity is usually effective within 1-5 minutes. The default wait is 5 minutes,
# once per azd environment (ROLE_PROPAGATION_WAITED is set afterwards); set ROLE_PROPAGATION_WAIT_SECONDS to
# change it (0 skips). If a deployment still gets 403, wait a few minutes and run `azd deploy` again.
set -eu

if [ "$(azd env get-value ROLE_PROPAGATION_WAITED 2>/dev/null || true)" = "true" ]; then
    exit 0
fi
wait_seconds="${ROLE_PROPAGATION_WAIT_SECONDS:-300}"
case "$wait_seconds" in
    ''|*[!0-9]*) echo "ROLE_PROPAGATION_WAIT_SECONDS must be a whole number of seconds, not '$wait_seconds'" >&2; exit 1 ;;
esac
if [ "$wait_seconds" -gt 0 ]; then
    echo "Waiting ${wait_seconds} s for the new role assignments to propagate before the first deployment"
    echo "(once per environment; ROLE_PROPAGATION_WAIT_SECONDS=0 skips it)."
    sleep "$wait_seconds"
fi
azd env set ROLE_PROPAGATION_WAITED true
