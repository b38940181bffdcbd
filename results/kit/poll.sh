# wait up to $1 seconds for the run's DONE, printing its status; the logs so far go back as one archive.
# Call it again at once: the machine is given back 30 s after a call ends. bash results/kit/poll.sh 580
for i in $(seq 1 $(( $1 / 10 ))); do [ -f /tmp/logs/DONE ] && break; sleep 10; done
cat /tmp/logs/status.txt; tail -c 1500 /tmp/logs/run.log; for f in /tmp/logs/*.out; do
  [ -f $f ] && { echo "== $f"; tail -c 600 $f | tr '\r' '\n' | tail -4; }; done
tar -czf $OUT/logs.tar.gz -C /tmp logs
