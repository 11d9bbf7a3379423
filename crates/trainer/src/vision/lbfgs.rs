//! L-BFGS for functions whose value and gradient come from one evaluation (a forward and
//! backward pass), on argmin's solver with a Moré–Thuente line search.
//!
//! argmin asks for the cost and the gradient separately, and its line search asks for
//! both at every trial point, one after the other: the adapter evaluates once and hands
//! the gradient of the point just costed to the gradient call, so each trial point costs
//! one evaluation.

use std::cell::RefCell;

use argmin::core::{
    CostFunction, Error as ArgminError, Executor, Gradient, State, TerminationReason,
};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use crate::{Error, Result};

/// A function to minimise: value and gradient at `x` together.
pub trait Objective {
    fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)>;
}

/// A point, the objective's value there and its gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

struct Adapter<'a, O: Objective> {
    objective: RefCell<&'a mut O>,
    /// The last point evaluated, its value and gradient.
    last: RefCell<Option<Evaluated>>,
    /// The first error the objective returned (argmin's errors are opaque).
    failed: &'a RefCell<Option<Error>>,
    evaluations: &'a RefCell<usize>,
}

impl<O: Objective> Adapter<'_, O> {
    fn eval(&self, x: &Vec<f64>) -> Result<(f64, Vec<f64>), ArgminError> {
        if let Some((p, f, g)) = &*self.last.borrow()
            && p == x
        {
            return Ok((*f, g.clone()));
        }
        match self.objective.borrow_mut().evaluate(x) {
            Ok((f, g)) => {
                *self.evaluations.borrow_mut() += 1;
                *self.last.borrow_mut() = Some((x.clone(), f, g.clone()));
                Ok((f, g))
            }
            Err(e) => {
                let msg = e.to_string();
                self.failed.borrow_mut().get_or_insert(e);
                Err(ArgminError::msg(msg))
            }
        }
    }
}

impl<O: Objective> CostFunction for Adapter<'_, O> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, x: &Vec<f64>) -> Result<f64, ArgminError> {
        Ok(self.eval(x)?.0)
    }
}

impl<O: Objective> Gradient for Adapter<'_, O> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, x: &Vec<f64>) -> Result<Vec<f64>, ArgminError> {
        Ok(self.eval(x)?.1)
    }
}

/// What a run of [`minimize`] ended with.
#[derive(Clone, Debug)]
pub struct Minimum {
    /// The best point seen and its value.
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: u64,
    pub evaluations: usize,
    /// Why the solver stopped, in argmin's words.
    pub reason: String,
}

/// Minimises `objective` from `x0` for at most `max_iters` L-BFGS iterations, keeping
/// `history` correction pairs (scipy's default is 10).
pub fn minimize<O: Objective>(
    objective: &mut O,
    x0: Vec<f64>,
    max_iters: u64,
    history: usize,
) -> Result<Minimum> {
    let (failed, evaluations) = (RefCell::new(None), RefCell::new(0));
    let adapter = Adapter {
        objective: RefCell::new(objective),
        last: RefCell::new(None),
        failed: &failed,
        evaluations: &evaluations,
    };
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), history);
    let run = Executor::new(adapter, solver)
        .configure(|s| s.param(x0).max_iters(max_iters))
        .run();
    if let Some(e) = failed.borrow_mut().take() {
        return Err(e);
    }
    let result = run.map_err(|e| Error::Diverged(format!("L-BFGS failed: {e}")))?;
    let state = result.state();
    let x = state
        .get_best_param()
        .or_else(|| state.get_param())
        .cloned()
        .ok_or_else(|| Error::Diverged("L-BFGS ended without a point".into()))?;
    let reason = match state.get_termination_reason() {
        Some(TerminationReason::MaxItersReached) => "iteration limit".to_string(),
        Some(r) => r.text().to_string(),
        None => "running".to_string(),
    };
    Ok(Minimum {
        x,
        value: state.get_best_cost(),
        iterations: state.get_iter(),
        evaluations: *evaluations.borrow(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rosenbrock {
        calls: usize,
    }

    impl Objective for Rosenbrock {
        fn evaluate(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>)> {
            self.calls += 1;
            let (a, b) = (1.0, 100.0);
            let mut f = 0.0;
            let mut g = vec![0.0; x.len()];
            for i in 0..x.len() - 1 {
                let (u, v) = (x[i], x[i + 1]);
                f += (a - u).powi(2) + b * (v - u * u).powi(2);
                g[i] += -2.0 * (a - u) - 4.0 * b * u * (v - u * u);
                g[i + 1] += 2.0 * b * (v - u * u);
            }
            Ok((f, g))
        }
    }

    #[test]
    fn minimises_rosenbrock_to_1e_6_with_one_evaluation_per_trial_point() {
        let mut r = Rosenbrock { calls: 0 };
        let m = minimize(&mut r, vec![-1.2, 1.0, -0.5, 0.8], 500, 10).unwrap();
        assert!(m.value < 1e-6, "{m:?}");
        for v in &m.x {
            assert!((v - 1.0).abs() < 1e-3, "{m:?}");
        }
        assert_eq!(
            m.evaluations, r.calls,
            "cost and gradient share evaluations"
        );
    }

    struct Failing;

    impl Objective for Failing {
        fn evaluate(&mut self, _: &[f64]) -> Result<(f64, Vec<f64>)> {
            Err(Error::Cancelled("client left".into()))
        }
    }

    #[test]
    fn an_objective_error_comes_back_as_itself() {
        let e = minimize(&mut Failing, vec![0.0], 5, 10).unwrap_err();
        assert!(matches!(e, Error::Cancelled(_)), "{e}");
    }
}
