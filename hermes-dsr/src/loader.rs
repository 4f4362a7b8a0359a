//! What the balancer and the host have in common: loading an embedded
//! object, mapping its mmapable arrays, attaching a tc program.

use std::sync::Arc;

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use hermes_bpf::{ProgramStats, Region};

use crate::error::{self, Error};

pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    program: &'static str,
    name: &'static str,
}

impl Loaded {
    pub(crate) fn load(object: &[u8], program: &'static str, name: &'static str) -> Result<Self, Error> {
        let mut ebpf =
            EbpfLoader::new().load(object).map_err(|e| error::classify(program, "creating the maps", &e))?;
        let prog: &mut SchedClassifier = program_mut(&mut ebpf, program, name)?;
        prog.load().map_err(|e| error::classify(program, "loading the program", &e))?;
        // The object's XDP programs are loaded now too, while its maps are
        // all held here: once `region` takes a map out of `ebpf`, the
        // descriptor a later load would be relocated against is closed.
        for (_, prog) in ebpf.programs_mut() {
            if let aya::programs::Program::Xdp(prog) = prog {
                prog.load().map_err(|e| error::classify(program, "loading its XDP programs", &e))?;
            }
        }
        Ok(Self { ebpf, program, name })
    }

    /// Maps `len` values of the mmapable array `map` as `T`.
    pub(crate) fn region<T>(&mut self, map: &'static str, len: usize) -> Result<Arc<Region<T>>, Error> {
        // SAFETY: `map` is declared in `bpf/dsr.h`'s programs as an mmapable
        // array of at least `len` values laid out as `T` (checked by the
        // layout test against the embedded object).
        let (region, _fd) = unsafe { Region::take_array(&mut self.ebpf, map, len) }.map_err(|e| {
            Error::KernelRefused { program: self.program, what: "mapping the maps", detail: e.to_string() }
        })?;
        Ok(Arc::new(region))
    }

    /// Attaches the program to `interface` (in the calling thread's network
    /// namespace) at `attach`. The attachment lasts as long as `self`.
    pub(crate) fn attach(&mut self, interface: &str, attach: TcAttachType) -> Result<(), Error> {
        let program = self.program;
        let fail = |e: &(dyn std::error::Error + 'static)| Error::Attach {
            program,
            interface: interface.to_owned(),
            detail: error::chain(e),
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded as SchedClassifier in Loaded::load");
        match prog.attach(interface, attach) {
            Ok(_) => Ok(()),
            Err(first) => {
                // Kernels before 6.6 have no TCX: tc needs the clsact qdisc.
                let _ = aya::programs::tc::qdisc_add_clsact(interface);
                prog.attach(interface, attach).map(|_| ()).map_err(|_| fail(&first))
            }
        }
    }

    /// Attaches XDP program `name` of the object (loaded with it, on the
    /// same maps) to `interface` in the calling thread's network namespace.
    /// The attachment lasts as long as `self`.
    pub(crate) fn attach_xdp(&mut self, name: &'static str, interface: &str) -> Result<(), Error> {
        let program = self.program;
        let prog: &mut Xdp = program_mut(&mut self.ebpf, program, name)?;
        prog.attach(interface, XdpMode::Default).map(|_| ()).map_err(|e| Error::Attach {
            program,
            interface: interface.to_owned(),
            detail: error::chain(&e),
        })
    }

    /// The run statistics of the tc program this was loaded with.
    pub(crate) fn stats(&self) -> Result<ProgramStats, Error> {
        self.stats_of(self.name)
    }

    /// The run statistics of program `name` of the object.
    pub(crate) fn stats_of(&self, name: &str) -> Result<ProgramStats, Error> {
        let info = self
            .ebpf
            .program(name)
            .ok_or_else(|| Error::KernelRefused {
                program: self.program,
                what: "reading the program's info",
                detail: format!("program `{name}` is missing"),
            })?
            .info()
            .map_err(|e| error::classify(self.program, "reading the program's info", &e))?;
        Ok(ProgramStats::from(&info))
    }
}

/// Program `name` of the object, as the kind `P` it was compiled as (a tc
/// classifier or an XDP program).
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, program: &'static str, name: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::KernelRefused {
            program,
            what: "reading the embedded object",
            detail: format!("program `{name}` is missing"),
        })?
        .try_into()
        .map_err(|e| error::classify(program, "reading the program", &e))
}
