# Checks of the jobs/local scripts' environment settings, sourced by them: a bad value exits 2 naming the
# variable, before anything is written.

# at_least NAME VALUE MIN: VALUE must be an integer >= MIN, in decimal without leading zeros (electra-train
# reads "08" as no number, and bash's arithmetic as octal).
at_least() {
  [[ "$2" =~ ^(0|[1-9][0-9]*)$ ]] && [ "$2" -ge "$3" ] || { echo "$1 must be an integer >= $3, got '$2'" >&2; exit 2; }
}
