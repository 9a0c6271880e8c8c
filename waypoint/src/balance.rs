//! Which endpoint of a backend a request tries first, and in what order it falls back to the
//! others when one fails to connect. Istio users choose the policy with a DestinationRule's
//! `trafficPolicy.loadBalancer.simple`; istiod maps LEAST_REQUEST and LEAST_CONN to Envoy's
//! LEAST_REQUEST, and uses LEAST_REQUEST when nothing is set, so that is the default here.
//! No I/O: the caller passes the in-flight counts and its random numbers.

/// A load-balancing policy (DestinationRule `loadBalancer.simple`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbPolicy {
    /// Envoy's LEAST_REQUEST with equal weights: two endpoints drawn at random, the one with
    /// fewer requests in flight wins ("power of two choices").
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
}

impl LbPolicy {
    /// The policy a `simple` value names. PASSTHROUGH (connect to the original address) has
    /// no meaning for a waypoint that routes to services and is refused with the rest.
    pub fn from_simple(simple: &str) -> Result<LbPolicy, String> {
        match simple {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => Ok(LbPolicy::LeastRequest),
            "ROUND_ROBIN" => Ok(LbPolicy::RoundRobin),
            "RANDOM" => Ok(LbPolicy::Random),
            other => Err(format!("loadBalancer.simple {other:?} is not supported")),
        }
    }
}

/// What a choice may draw on: the round-robin position of this backend port and two random
/// numbers.
#[derive(Clone, Copy, Debug)]
pub struct Rolls {
    pub rr: usize,
    pub a: u64,
    pub b: u64,
}

/// `eps` in the order to try them: the policy's choice first, then the others in ring order
/// after it (so a failed connect moves on to a different endpoint each time).
pub fn order<T>(
    policy: LbPolicy,
    mut eps: Vec<T>,
    in_flight: impl Fn(&T) -> usize,
    rolls: Rolls,
) -> Vec<T> {
    let n = eps.len();
    if n <= 1 {
        return eps;
    }
    let first = match policy {
        LbPolicy::RoundRobin => rolls.rr % n,
        LbPolicy::Random => (rolls.a % n as u64) as usize,
        LbPolicy::LeastRequest => {
            // Drawn with replacement, as Envoy does; a tie keeps the first draw.
            let x = (rolls.a % n as u64) as usize;
            let y = (rolls.b % n as u64) as usize;
            if in_flight(&eps[y]) < in_flight(&eps[x]) {
                y
            } else {
                x
            }
        }
    };
    eps.rotate_left(first);
    eps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_simple_maps_istio_names() {
        for (s, want) in [
            ("LEAST_REQUEST", Ok(LbPolicy::LeastRequest)),
            ("LEAST_CONN", Ok(LbPolicy::LeastRequest)),
            ("UNSPECIFIED", Ok(LbPolicy::LeastRequest)),
            ("ROUND_ROBIN", Ok(LbPolicy::RoundRobin)),
            ("RANDOM", Ok(LbPolicy::Random)),
        ] {
            assert_eq!(LbPolicy::from_simple(s), want, "{s}");
        }
        assert!(LbPolicy::from_simple("PASSTHROUGH").is_err());
        assert!(LbPolicy::from_simple("least_request").is_err());
        assert_eq!(LbPolicy::default(), LbPolicy::LeastRequest);
    }

    #[test]
    fn least_request_takes_the_less_busy_of_two_draws() {
        let eps = vec!["a", "b", "c", "d"];
        let busy = |e: &&str| match *e {
            "a" => 5,
            "b" => 1,
            "c" => 3,
            _ => 0,
        };
        let cases = [
            // (draw a, draw b, first, order)
            (0, 1, "b", vec!["b", "c", "d", "a"]),
            (1, 0, "b", vec!["b", "c", "d", "a"]),
            (0, 2, "c", vec!["c", "d", "a", "b"]),
            (2, 3, "d", vec!["d", "a", "b", "c"]),
            // Same endpoint drawn twice: it is the choice whatever its load.
            (0, 4, "a", vec!["a", "b", "c", "d"]),
        ];
        for (a, b, first, want) in cases {
            let got = order(
                LbPolicy::LeastRequest,
                eps.clone(),
                busy,
                Rolls { rr: 0, a, b },
            );
            assert_eq!(got[0], first, "draws {a},{b}");
            assert_eq!(got, want, "draws {a},{b}");
        }
        // A tie keeps the first draw.
        let idle = |_: &&str| 0;
        let got = order(
            LbPolicy::LeastRequest,
            eps.clone(),
            idle,
            Rolls { rr: 0, a: 2, b: 1 },
        );
        assert_eq!(got[0], "c");
    }

    #[test]
    fn least_request_steers_load_away_from_a_slow_endpoint() {
        // Endpoint 0 holds 10 requests in flight, the others none: over every pair of draws
        // it is chosen only when drawn twice (1 in n² of the pairs).
        let eps: Vec<usize> = (0..4).collect();
        let busy = |e: &usize| if *e == 0 { 10 } else { 0 };
        let mut chosen = [0usize; 4];
        for a in 0..4 {
            for b in 0..4 {
                let got = order(
                    LbPolicy::LeastRequest,
                    eps.clone(),
                    busy,
                    Rolls { rr: 0, a, b },
                );
                chosen[got[0]] += 1;
            }
        }
        assert_eq!(chosen, [1, 5, 5, 5]);
    }

    #[test]
    fn round_robin_and_random() {
        let eps = vec![1, 2, 3];
        let none = |_: &i32| 0;
        let rr = |rr| {
            order(
                LbPolicy::RoundRobin,
                eps.clone(),
                none,
                Rolls { rr, a: 0, b: 0 },
            )
        };
        assert_eq!(rr(0), vec![1, 2, 3]);
        assert_eq!(rr(1), vec![2, 3, 1]);
        assert_eq!(rr(5), vec![3, 1, 2]);
        let random = order(
            LbPolicy::Random,
            eps.clone(),
            none,
            Rolls { rr: 0, a: 7, b: 0 },
        );
        assert_eq!(random, vec![2, 3, 1]);
        // One endpoint, or none: nothing to choose.
        assert_eq!(
            order(
                LbPolicy::LeastRequest,
                vec![9],
                none,
                Rolls { rr: 3, a: 1, b: 2 }
            ),
            vec![9]
        );
        assert!(order(
            LbPolicy::LeastRequest,
            Vec::<i32>::new(),
            none,
            Rolls { rr: 0, a: 0, b: 0 }
        )
        .is_empty());
    }
}
