#!/bin/sh
# deploytasks from any CI (GitLab, Jenkins, Buildkite, a cron job...): the flow of docs/ci/github
# as one POSIX shell script. Copy it into your repository (ci/deploy.sh) and run it from the root.
#
#   ci/deploy.sh build              build and push the images, tagged by the full SHA
#   ci/deploy.sh staging            deploy the SHA to staging
#   ci/deploy.sh promote [SHA]      promote SHA (default: the SHA) from staging to production
#   ci/deploy.sh rollback [TO]      production back to the colour that served before, or to TO:
#                                   a release tag or a SHA that served there
#
# What it reads from the environment (your CI's variables and secrets):
#   SHA                  the full commit SHA (default: git rev-parse HEAD); GitLab: $CI_COMMIT_SHA,
#                        Jenkins: $GIT_COMMIT, CircleCI: $CIRCLE_SHA1, Bitbucket: $BITBUCKET_COMMIT
#   IMAGES               build: "IMAGE=CONTEXT ..." (default: "$IMAGE_WEB=."), one per IMAGE_<SERVICE>
#   REGISTRY             build: where to log in (default: the host part of the first image)
#   REGISTRY_USER, REGISTRY_PASSWORD   build pushes with them; deploys read the registry with them
#   SSH_PRIVATE_KEY      the deploy user's key, added to an ssh-agent for this run
#   SSH_KNOWN_HOSTS      the hosts' keys, written to ~/.ssh/known_hosts (KNOWN_HOSTS' default)
#   STAGING_ENV, PRODUCTION_ENV            envs/<env>.env, when the repository does not track it
#   STAGING_APP_ENV, PRODUCTION_APP_ENV    envs/<env>.app.env (APP_ENV_FILE), may be empty
#   DEPLOYTASKS          what pip installs when inv is missing (default: deploytasks; pin it)
#   LOCK_WAIT            seconds a staging deploy waits for a deploy lock held by someone else (600)
#
# On a runner that keeps its home between jobs, leave SSH_PRIVATE_KEY and SSH_KNOWN_HOSTS unset and
# keep the key and the hosts' keys there. Run promote and rollback one at a time and behind an
# approval (GitLab: `resource_group: production` and a protected environment with `when: manual`).
set -eu

die() {
    echo "deploy.sh: $*" >&2
    exit 2
}

full_sha() {  # the SHA to build and deploy: images are tagged by the full SHA
    sha=${SHA:-$(git rev-parse HEAD)}
    case $sha in
        *[!0-9a-f]*) die "SHA=$sha is not a full git SHA (40 hex characters)" ;;
    esac
    [ ${#sha} -eq 40 ] || die "SHA=$sha is not a full git SHA (40 hex characters)"
    echo "$sha"
}

registry_login() {
    [ -n "${REGISTRY_USER:-}" ] || return 0
    first=${IMAGES:-${IMAGE_WEB:-}}
    registry=${REGISTRY:-${first%%/*}}
    printf '%s' "${REGISTRY_PASSWORD:-}" | docker login "$registry" --username "$REGISTRY_USER" --password-stdin
}

build() {
    sha=$(full_sha)
    images=${IMAGES:-${IMAGE_WEB:+$IMAGE_WEB=.}}
    [ -n "$images" ] || die "set IMAGES (\"IMAGE=CONTEXT ...\") or IMAGE_WEB"
    registry_login
    for pair in $images; do
        image=${pair%%=*}
        context=${pair#*=}
        [ "$context" != "$pair" ] || context=.
        docker build --tag "$image:$sha" "$context"
        docker push "$image:$sha"
    done
}

ssh_setup() {
    mkdir -p "$HOME/.ssh"
    chmod 700 "$HOME/.ssh"
    if [ -n "${SSH_KNOWN_HOSTS:-}" ]; then
        printf '%s\n' "$SSH_KNOWN_HOSTS" > "$HOME/.ssh/known_hosts"
    fi
    if [ -n "${SSH_PRIVATE_KEY:-}" ]; then
        printf '%s\n' "$SSH_PRIVATE_KEY" > "$HOME/.ssh/deploy_key"
        eval "$(ssh-agent -s)" > /dev/null
        trap 'ssh-agent -k > /dev/null' EXIT
        ssh-add -q "$HOME/.ssh/deploy_key"
    fi
}

env_files() {  # env_files ENV...: envs/ENV.env and envs/ENV.app.env from STAGING_ENV, STAGING_APP_ENV...
    for env in "$@"; do
        name=$(printf '%s' "$env" | tr 'a-z-' 'A-Z_')
        case $name in *[!A-Z0-9_]*|'') die "environment name $env" ;; esac
        eval "content=\${${name}_ENV:-}; app=\${${name}_APP_ENV:-}"
        [ -e "envs/$env.env" ] || [ -z "$content" ] || printf '%s\n' "$content" > "envs/$env.env"
        [ -e "envs/$env.env" ] || die "envs/$env.env is missing: track it in git or set ${name}_ENV"
        [ -e "envs/$env.app.env" ] || printf '%s\n' "$app" > "envs/$env.app.env"
    done
}

deploytasks_setup() {  # deploytasks_setup ENV...: inv, the SSH key and known hosts, the env files
    umask 077
    if ! command -v inv > /dev/null; then
        venv=${DEPLOYTASKS_VENV:-$HOME/.deploytasks-venv}
        [ -x "$venv/bin/inv" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "${DEPLOYTASKS:-deploytasks}"; }
        PATH=$venv/bin:$PATH
    fi
    ssh_setup
    env_files "$@"
}

staging() {
    sha=$(full_sha)
    deploytasks_setup staging
    inv deploy --env staging --sha "$sha" --lock-wait "${LOCK_WAIT:-600}"
    inv status --env staging
}

promote() {
    sha=${1:-$(full_sha)}
    deploytasks_setup staging production
    inv promote --sha "$sha"
    inv status --env production
}

rollback() {
    deploytasks_setup production
    if [ -z "${1:-}" ]; then
        inv rollback --env production
    else
        # a release tag names its commit; anything else is taken as a SHA (deploytasks checks it)
        sha=$(git rev-parse --verify --quiet "refs/tags/$1^{commit}") || sha=$1
        inv rollback --env production --to "$sha"
    fi
    inv status --env production
}

usage() {
    sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

command=${1:-}
[ $# -gt 0 ] && shift
case $command in
    build) build ;;
    staging) staging ;;
    promote) promote "$@" ;;
    rollback) rollback "$@" ;;
    *) usage ;;
esac
