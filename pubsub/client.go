package pubsub

import (
	"errors"
	"fmt"
	neturl "net/url"

	"github.com/redis/rueidis"
)

// errNoRedis reports a Redis config with neither a URL nor a client.
var errNoRedis = errors.New("pubsub: redis config needs URL or Client")

// redisClient returns client if it is non-nil (own false: the caller keeps
// it), and otherwise a client it builds from url and the Sentinel fields
// (own true: Close must close it).
//
// With master set (or the URL's master_set parameter), the client asks the
// Sentinels for that master and follows failovers: the Sentinels are addrs,
// or the URL's host (and addr= parameters) when addrs is empty. The URL's
// user, password and database apply to the master only; its TLS (rediss://)
// and dial_timeout apply to master and Sentinels alike; Sentinels are
// contacted without AUTH. Deployments needing more (Sentinel passwords,
// replicas) build their own rueidis.Client and pass it in.
//
// Redis Cluster is rejected: one subscription connection per node relies on
// a single server (or a Sentinel-managed master) seeing every PUBLISH.
func redisClient(client rueidis.Client, url, master string, addrs []string) (c rueidis.Client, own bool, err error) {
	if client == nil {
		if url == "" {
			return nil, false, errNoRedis
		}
		opt, err := rueidis.ParseURL(url)
		if err != nil {
			// url.Error quotes the whole URL, password included: keep
			// only the reason so the error can be logged.
			var ue *neturl.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, false, fmt.Errorf("pubsub: redis URL: %w", err)
		}
		if master != "" {
			opt.Sentinel.MasterSet = master
		}
		if opt.Sentinel.MasterSet != "" {
			if len(addrs) > 0 {
				opt.InitAddress = append([]string(nil), addrs...)
			}
			// rueidis dials Sentinels with Sentinel.Dialer and TLSConfig
			// only; left zero that is no timeout and no TLS.
			opt.Sentinel.Dialer = opt.Dialer
			if opt.Sentinel.Dialer.Timeout == 0 {
				opt.Sentinel.Dialer.Timeout = rueidis.DefaultDialTimeout
			}
			if opt.TLSConfig != nil {
				opt.Sentinel.TLSConfig = opt.TLSConfig.Clone()
			}
		} else if len(addrs) > 0 {
			return nil, false, errors.New("pubsub: SentinelAddrs given without SentinelMaster")
		}
		if client, err = rueidis.NewClient(opt); err != nil {
			return nil, false, fmt.Errorf("pubsub: connect to redis: %w", err)
		}
		own = true
	}
	if client.Mode() == rueidis.ClientModeCluster {
		if own {
			client.Close()
		}
		return nil, false, errors.New("pubsub: Redis Cluster is not supported")
	}
	return client, own, nil
}
