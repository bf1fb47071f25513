# Sourced by the test scripts: `stage NAME` starts a timed stage, `stage_done` ends it. Each
# stage's time is printed and, when ATTNSCOPE_TIMINGS names a file (.ci/run), appended there
# for the summary at the end of the run.
stage() {
  _STAGE=$1 _STAGE_T0=$SECONDS
  echo "== $_STAGE"
}
stage_done() {
  local dt=$((SECONDS - _STAGE_T0))
  echo "== $_STAGE: ${dt} s"
  if [ -n "${ATTNSCOPE_TIMINGS:-}" ]; then
    printf '%-48s %5d s\n' "$_STAGE" "$dt" >>"$ATTNSCOPE_TIMINGS"
  fi
}
