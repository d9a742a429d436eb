#!/usr/bin/env bash
# Make a private CA and certificates for the scheduler, the workers and the client, with the
# matching `distributed` configuration files.
#   cluster/tls/make-certs.sh OUT_DIR [HOST_OR_IP ...]
# HOST_OR_IP: names and addresses to put in the certificates' subjectAltName (distributed checks
# the chain, not the name, but other TLS tools may). Writes into OUT_DIR:
#   ca.pem ca-key.pem                      the CA (keep ca-key.pem off the cluster)
#   scheduler.pem scheduler-key.pem        worker.pem worker-key.pem   client.pem client-key.pem
#   scheduler.yaml worker.yaml client.yaml  distributed config of each role (absolute paths)
# Use: TLS_DIR=OUT_DIR for cluster/local/start-*.sh; DASK_CONFIG=OUT_DIR/client.yaml for taxi-hpo.
set -euo pipefail

out=${1:?usage: $0 OUT_DIR [HOST_OR_IP ...]}
shift
days=${TLS_DAYS:-365}
mkdir -p "$out"
out=$(cd "$out" && pwd)
umask 077

san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+=",IP:$host"; else san+=",DNS:$host"; fi
done

key_args=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${key_args[@]}" -keyout "$out/ca-key.pem" -out "$out/ca.pem" -days "$days" \
    -subj "/CN=taxi-hpo-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

for role in scheduler worker client; do
    openssl req "${key_args[@]}" -keyout "$out/$role-key.pem" -out "$out/$role.csr" \
        -subj "/CN=taxi-hpo-$role" 2>/dev/null
    # Every role both serves and connects (workers talk to each other): both key usages.
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$san" >"$out/$role.ext"
    openssl x509 -req -in "$out/$role.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
        -out "$out/$role.pem" -days "$days" -extfile "$out/$role.ext" 2>/dev/null
    rm -f "$out/$role.csr" "$out/$role.ext"
    cat >"$out/$role.yaml" <<YAML
# distributed configuration of the $role role, made by cluster/tls/make-certs.sh.
# Use: export DASK_CONFIG=$out/$role.yaml (paths are absolute: rewrite them if you move the files).
distributed:
  comm:
    require-encryption: true
    tls:
      ca-file: $out/ca.pem
      $role:
        cert: $out/$role.pem
        key: $out/$role-key.pem
YAML
done
rm -f "$out/ca.srl"
chmod 644 "$out"/*.pem "$out"/*.yaml
chmod 600 "$out"/*-key.pem
echo "certificates and distributed configs in $out (CA valid $days days)"
