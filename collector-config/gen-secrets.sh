#!/usr/bin/env bash
# Makes every secret the secured setup needs (docker-compose.yml, README "Security"):
#
#   collector-config/gen-secrets.sh [DIR]     # DIR defaults to collector-config/secrets (git-ignored)
#
# In DIR (created mode 0700):
#   ca.crt, ca.key            a CA (10 years) that signs Spindle's certificate; ca.crt is what clients
#                             trust (Prometheus' tls_config.ca_file, OTEL_EXPORTER_OTLP_CERTIFICATE)
#   spindle.crt, spindle.key  Spindle's certificate (1 year) for the names spindle, localhost and
#                             127.0.0.1: receivers.otlp.tls and prometheus.tls. Usable as a client
#                             certificate too, so `spindle healthcheck` can present it when
#                             prometheus.tls.client_ca_file requires one
#   otlp-tokens               receivers.otlp.auth.bearer_tokens_file: one token per service, limited
#                             to that service.name
#   <service>.env             OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<its token>, the
#                             service's compose env_file
#   scrape-password           the password Prometheus scrapes Spindle with (basic_auth.password_file)
#   spindle.env               its bcrypt hash for Spindle, SPINDLE__PROMETHEUS__AUTH__BASIC_AUTH_USERS__
#                             PROMETHEUS='$2y$…' (prometheus.auth.basic_auth_users), compose env_file
#   grafana-admin-password    Grafana's `admin` password (GF_SECURITY_ADMIN_PASSWORD__FILE)
#
# Idempotent: what exists is kept, so running it again changes nothing. Spindle's certificate is
# issued again when it is missing, older than the CA or expires within 30 days; the hash again when
# the password changed; the token file and env files are rewritten from the tokens they hold (a new
# service gets a new token, the others keep theirs). Delete a file to replace that secret.
# Keys, tokens, passwords and env files are mode 0600 and the certificates 0644; no secret is
# printed, only what was made or kept.
#
# Services: SPINDLE_SECRET_SERVICES (space-separated service.name values), default
# "demo-frontend demo-backend" (docker-compose.yml's demo services).
# Needs: bash, openssl, htpasswd (Debian/Ubuntu: apt-get install openssl apache2-utils).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/secrets}"
services="${SPINDLE_SECRET_SERVICES:-demo-frontend demo-backend}"
scrape_user=prometheus

die() {
    printf 'gen-secrets.sh: %s\n' "$*" >&2
    exit 1
}
command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian/Ubuntu: apt-get install openssl)"
command -v htpasswd >/dev/null 2>&1 ||
    die "htpasswd not found; it makes the bcrypt hash of the scrape password (Debian/Ubuntu: apt-get install apache2-utils)"
for s in $services; do
    [[ "$s" =~ ^[A-Za-z0-9._-]+$ ]] || die "service name '$s' must be letters, digits, '.', '_' or '-'"
done

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"
dir="$(cd "$dir" && pwd)"

report() {
    # what, file, note — never the content.
    printf '  %-8s %s  (%s)\n' "$1" "$dir/$2" "$3"
}

# Writes stdin to $dir/$1 with mode $2, atomically (a reader such as Spindle's reload never sees
# half a file).
put() {
    local tmp
    tmp="$(mktemp "$dir/.$1.XXXXXX")"
    cat >"$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" "$dir/$1"
}

# Like put, but leaves an identical file alone (no rewrite, no reload); prints made or kept.
put_changed() {
    cat >"$work/new"
    if [[ -f "$dir/$1" ]] && cmp -s "$work/new" "$dir/$1"; then
        printf kept
    else
        put "$1" "$2" <"$work/new"
        printf made
    fi
}

# A random secret: 32 hex characters (128 bits).
random() {
    openssl rand -hex 16
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

printf 'gen-secrets.sh: secrets in %s\n' "$dir"

# --- CA --------------------------------------------------------------------------------------
if [[ -s "$dir/ca.key" && -s "$dir/ca.crt" ]]; then
    report kept ca.crt "CA certificate"
else
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$work/ca.key" -out "$work/ca.crt" -days 3650 -subj "/CN=Spindle demo CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>"$work/log" || die "openssl could not make the CA: $(cat "$work/log")"
    put ca.key 0600 <"$work/ca.key"
    put ca.crt 0644 <"$work/ca.crt"
    rm -f "$dir/spindle.crt"
    report made ca.crt "CA certificate; its key in ca.key"
fi

# --- Spindle's certificate -------------------------------------------------------------------
if [[ -s "$dir/spindle.crt" && -s "$dir/spindle.key" && ! "$dir/ca.crt" -nt "$dir/spindle.crt" ]] &&
    openssl x509 -in "$dir/spindle.crt" -noout -checkend 2592000 >/dev/null 2>&1; then
    report kept spindle.crt "Spindle's certificate"
else
    cat >"$work/ext" <<'EOF'
subjectAltName=DNS:spindle,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature
basicConstraints=critical,CA:FALSE
EOF
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$work/spindle.key" -out "$work/spindle.csr" -subj "/CN=spindle" 2>"$work/log" ||
        die "openssl could not make Spindle's key: $(cat "$work/log")"
    openssl x509 -req -in "$work/spindle.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days 365 -extfile "$work/ext" -out "$work/spindle.crt" \
        2>"$work/log" || die "openssl could not sign Spindle's certificate: $(cat "$work/log")"
    put spindle.key 0600 <"$work/spindle.key"
    put spindle.crt 0644 <"$work/spindle.crt"
    report made spindle.crt "Spindle's certificate for spindle, localhost, 127.0.0.1; its key in spindle.key"
fi

# --- receiver tokens, one per service --------------------------------------------------------
{
    printf '# receivers.otlp.auth.bearer_tokens_file: one token per service, limited to its service.name.\n'
    printf '# Made by collector-config/gen-secrets.sh; Spindle rereads it when it changes.\n'
} >"$work/tokens"
for s in $services; do
    token=""
    if [[ -f "$dir/otlp-tokens" ]]; then
        token="$(awk -v s="$s" '$1 !~ /^#/ && $2 == s { print $1; exit }' "$dir/otlp-tokens")"
    fi
    [[ -n "$token" ]] || token="$(random)"
    printf '%s %s\n' "$token" "$s" >>"$work/tokens"
    note="$(printf 'OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%%20%s\n' "$token" | put_changed "$s.env" 0600)"
    report "$note" "$s.env" "the token of service.name $s, as OTEL_EXPORTER_OTLP_HEADERS"
done
note="$(put_changed otlp-tokens 0600 <"$work/tokens")"
report "$note" otlp-tokens "receivers.otlp.auth.bearer_tokens_file, one token per service: $services"

# --- scrape password and its bcrypt hash -----------------------------------------------------
if [[ -s "$dir/scrape-password" ]]; then
    report kept scrape-password "Prometheus' basic_auth password"
else
    random | tr -d '\n' | put scrape-password 0600
    report made scrape-password "Prometheus' basic_auth password (user $scrape_user)"
fi
if [[ -s "$dir/spindle.env" && ! "$dir/scrape-password" -nt "$dir/spindle.env" ]]; then
    report kept spindle.env "the scrape password's bcrypt hash"
else
    # The password goes through stdin (-i), never the command line.
    hash="$(htpasswd -niBC 10 "$scrape_user" <"$dir/scrape-password" | cut -d: -f2-)"
    [[ "$hash" == '$2'* ]] || die "htpasswd did not return a bcrypt hash"
    {
        printf '# prometheus.auth.basic_auth_users.%s: the bcrypt hash of scrape-password.\n' "$scrape_user"
        printf '# Single quotes: docker compose reads the value literally (no $ interpolation).\n'
        printf "SPINDLE__PROMETHEUS__AUTH__BASIC_AUTH_USERS__%s='%s'\n" "${scrape_user^^}" "$hash"
    } | put spindle.env 0600
    report made spindle.env "bcrypt hash of scrape-password for prometheus.auth.basic_auth_users"
fi

# --- Grafana ---------------------------------------------------------------------------------
if [[ -s "$dir/grafana-admin-password" ]]; then
    report kept grafana-admin-password "Grafana's admin password"
else
    random | tr -d '\n' | put grafana-admin-password 0600
    report made grafana-admin-password "Grafana's admin password (user admin)"
fi
