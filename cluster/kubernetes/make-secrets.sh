#!/usr/bin/env bash
# The two Secrets every pod of the manifests mounts, made once on the admin's machine with the
# image's own `secrets` role (cluster/compose/entrypoint.sh): taxi-hpo-tls (a CA's scheduler,
# worker and client certificates, the CA's key not kept; mounted at /secrets-tls) and
# taxi-hpo-auth (the MLflow admin's password, Prefect's auth string; mounted at /secrets).
#   cluster/kubernetes/make-secrets.sh [NAMESPACE]        (default taxi-hpo; needs kubectl, openssl)
# Without them the pods do not start: closed by default, as cluster/local and compose are.
# ALLOW_PLAINTEXT=1 / ALLOW_NO_AUTH=1 here and in the manifests' env open them (see ../README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=${1:-taxi-hpo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp SECRETS_DIR=$tmp/auth SECRETS_TLS_DIR=$tmp/tls CERT_NAMES=taxi-hpo-scheduler \
    "$here/../compose/entrypoint.sh" secrets
# The client's distributed config names the files where the pods see them.
if [ -d "$tmp/tls" ]; then
    sed -i "s|$tmp/tls|/secrets-tls|g" "$tmp"/tls/*.yaml
    kubectl create secret generic taxi-hpo-tls -n "$ns" --from-file="$tmp/tls"
else
    kubectl create secret generic taxi-hpo-tls -n "$ns"   # ALLOW_PLAINTEXT=1: empty
fi
kubectl create secret generic taxi-hpo-auth -n "$ns" --from-file="$tmp/auth"
echo "Secrets taxi-hpo-tls and taxi-hpo-auth in namespace $ns; the UIs' credentials:"
echo "  kubectl get secret -n $ns taxi-hpo-auth -o jsonpath='{.data.mlflow-auth\.env}' | base64 -d"
